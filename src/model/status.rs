//! Status codes as Istio reads them, for validation and translation alike:
//! gRPC statuses by name (a fault's `grpcStatus`) and the HTTP status codes
//! Istio takes from a `retryOn` list.

/// The gRPC status names, in code order: a name's index is its code.
pub const GRPC_STATUSES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a gRPC status given by name ("UNAVAILABLE") or by number
/// ("14"); None for anything else.
pub fn grpc_status_code(status: &str) -> Option<u32> {
    if let Some(code) = GRPC_STATUSES.iter().position(|s| *s == status) {
        return u32::try_from(code).ok();
    }
    status.parse::<u32>().ok().filter(|n| (*n as usize) < GRPC_STATUSES.len())
}

/// Whether Go's `http.StatusText` names the code: Istio takes such a number
/// in `retryOn` as a retriable status code.
pub fn is_http_status(code: u32) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_give_the_code() {
        assert_eq!(grpc_status_code("OK"), Some(0));
        assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status_code("UNAUTHENTICATED"), Some(16));
        assert_eq!(grpc_status_code("14"), Some(14));
        assert_eq!(grpc_status_code("17"), None);
        assert_eq!(grpc_status_code("unavailable"), None);
    }
}
