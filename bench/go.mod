module github.com/gosupervise/supervisor/bench

go 1.26

require (
	github.com/alitto/pond/v2 v2.7.1
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/gosupervise/supervisor v0.0.0
	github.com/panjf2000/ants/v2 v2.12.1
	github.com/thejerf/suture/v4 v4.0.6
	go.uber.org/goleak v1.3.0
)

require golang.org/x/sync v0.11.0 // indirect

replace github.com/gosupervise/supervisor => ../
