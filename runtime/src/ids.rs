//! Ids: a prefix and 16 random bytes in hex (`task-3f9c…`).

/// A new random id with a prefix.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('-');
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}
