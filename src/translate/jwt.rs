//! End-user authentication: Envoy's JWT filter. Its contract with RBAC
//! ([`super::rbac`]): each verified token's payload is left in dynamic
//! metadata under [`JWT_FILTER`], key [`JWT_PAYLOAD_METADATA`], where
//! `request.auth.*` conditions read its claims.

/// The JWT filter's name, which is also its dynamic metadata namespace.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where the filter leaves a verified token's payload.
pub const JWT_PAYLOAD_METADATA: &str = "jwt_payload";
