//! AFL++ entry point of [`ibp_fuzz::decoders`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ibp_fuzz::decoders(data);
    });
}
