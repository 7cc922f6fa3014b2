module github.com/gosupervise/supervisor/bench

go 1.26

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/gosupervise/supervisor v0.0.0
	github.com/thejerf/suture/v4 v4.0.6
	go.uber.org/goleak v1.3.0
)

replace github.com/gosupervise/supervisor => ../
