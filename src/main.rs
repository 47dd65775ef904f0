#![forbid(unsafe_code)]

/// jemalloc instead of glibc's malloc: the cache's long-lived objects are allocated among many
/// short-lived ones (watch events, request and response bodies), and glibc's allocator keeps
/// the pages they fragment. At 10 000 workspaces that was a third of the controller's memory
/// (docs/benchmarks.md); jemalloc's size classes and decay give them back. Its settings are in
/// .cargo/config.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    switchyard::cli::main(switchyard::cli::parse()).await
}
