fn main() {
    println!("ferrum {}", env!("CARGO_PKG_VERSION"));
}
