#[fleet_macros::remote]
fn identity<T>(value: T) -> T {
    value
}

fn main() {}
