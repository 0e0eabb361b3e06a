pub struct Emitter<T>(T);

#[fleet_macros::remote]
async fn split(left: Emitter<u32>, right: Emitter<u32>) {}

fn main() {}
