module courier.local/bench/loadgen

go 1.22
