from telemetry_bench.cli import main

main()
