package bench_test

import (
	"testing"

	"go.uber.org/goleak"
)

// ants starts a default pool, and RoadRunner's events package its event
// bus, when their packages load; their goroutines are not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreTopFunction("github.com/roadrunner-server/events.(*Bus).handleEvents"),
	)
}
