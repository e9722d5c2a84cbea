fn main() {
    println!("pinbridge");
}
