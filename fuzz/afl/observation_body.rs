//! AFL++ entry point of [`ibp_fuzz::observation_body`].

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ibp_fuzz::observation_body(data);
    });
}
