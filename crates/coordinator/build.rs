// The migrations are embedded by `sqlx::migrate!`, which cannot tell cargo to watch
// the folder: without this, a new migration is not compiled in until a source changes.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
