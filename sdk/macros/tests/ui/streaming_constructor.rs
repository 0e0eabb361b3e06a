pub struct Emitter<T>(T);
pub struct Feed;

#[fleet_macros::actor]
impl Feed {
    pub fn new(out: Emitter<u32>) -> Self {
        Feed
    }
}

fn main() {}
