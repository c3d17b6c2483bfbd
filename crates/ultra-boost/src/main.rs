//! ultra-boost: the web service guard carries to production.
fn main() {
    println!("ultra-boost: not built yet");
}
