//! One normalisation of the names that key usage and results, applied the same way on
//! every path (hits in, usage queries, fan-out answers, observations).
//!
//! * Domains are DNS names: compared without case and without the root's trailing dot, so
//!   `RPC.Example.` and `rpc.example` are one key.
//! * Member names are the `Details.Name` of the member list, which is case-sensitive in
//!   Go (storage.md §1.5): only surrounding whitespace is removed.

/// A domain as a key: trimmed, lower case, without a trailing dot.
pub fn domain(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A member name as a key: trimmed.
pub fn member(s: &str) -> String {
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_compare_without_case_or_root_dot() {
        assert_eq!(domain(" RPC.Example. "), "rpc.example");
        assert_eq!(domain("rpc.example"), "rpc.example");
        assert_eq!(domain("."), "");
        assert_eq!(member(" Amforc "), "Amforc");
    }
}
