//! AFL++ entry point of [`ibp_fuzz::signature_headers`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ibp_fuzz::signature_headers(data);
    });
}
