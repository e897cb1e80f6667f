"""What the tests and the benchmark both need, owned by neither: child processes on
127.0.0.1 (a free port, a readiness wait, a memory reading) and the soak workload."""
