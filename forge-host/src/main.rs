//! The `forge` binary: all work lives in the library; this maps its outcome to an exit status.
fn main() {
    std::process::exit(forge_host::cli::main());
}

// Evaluation allocates and frees tensors of the same few sizes over and over; glibc returns large
// blocks to the OS each time and page-faults them back in, which cost more than the matmuls on the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
