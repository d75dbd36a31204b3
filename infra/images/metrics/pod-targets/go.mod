module courier.invalid/pod-targets

go 1.22
