//! `caromd`, the Carom daemon: see the library documentation.

fn main() -> std::process::ExitCode {
    caromd::main_with_args(std::env::args_os())
}
