from telemetry_tools.bench.cli import main

main()
