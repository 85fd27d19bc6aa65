fn main() -> std::process::ExitCode {
    zt_janitor::cli::main()
}
