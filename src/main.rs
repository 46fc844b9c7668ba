fn main() {
    let v = portcullis::tailnet::build_versions();
    println!("tailscale {} go {}", v.tailscale, v.go);
}
