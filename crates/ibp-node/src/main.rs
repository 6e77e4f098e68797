//! `ibp-node`: the daemon. (Commands arrive with the daemon work.)
fn main() {
    println!(
        "ibp-node {}: the demo arrives with the node daemon",
        env!("CARGO_PKG_VERSION")
    );
}
