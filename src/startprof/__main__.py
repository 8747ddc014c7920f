from startprof.cli import run

run()
