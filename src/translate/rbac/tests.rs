//! The translation's own checks; `table` runs the decision table against
//! a real Envoy.

mod table;
