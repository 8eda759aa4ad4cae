//! `suanli-scheduler`: not yet served; the store is the first part to land.

fn main() {
    eprintln!("suanli-scheduler: the daemon is not available in this build yet");
    std::process::exit(2);
}
