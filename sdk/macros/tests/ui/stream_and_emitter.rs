pub struct Emitter<T>(T);

#[fleet_macros::remote]
fn both(out: Emitter<u32>) -> impl Stream<Item = u32> {
    todo!()
}

fn main() {}
