package supervisor_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// FuzzMapTableMatchesModel replays byte pairs (op, key) against a MapTable and
// a naive ordered slice, and checks they agree: order, values, Len, Get and
// Delete's answer. Enough deletes make the table compact its tombstones.
func FuzzMapTableMatchesModel(f *testing.F) {
	const put, del = 0, 1
	var churn []byte
	for k := range 100 {
		churn = append(churn, put, byte(k))
	}
	for k := range 90 {
		churn = append(churn, del, byte(k))
	}
	churn = append(churn, put, 5, put, 95)
	f.Add(churn)
	f.Add([]byte{put, 1, put, 2, del, 1, put, 1, put, 2})

	f.Fuzz(func(t *testing.T, ops []byte) {
		tbl := supervisor.NewMapTable[byte, int]()
		var order []byte // the model: keys in insertion order
		values := make(map[byte]int)
		for i := 0; i+1 < len(ops); i += 2 {
			key := ops[i+1]
			switch ops[i] % 2 {
			case put:
				tbl.Put(key, i)
				if _, ok := values[key]; !ok {
					order = append(order, key)
				}
				values[key] = i
			case del:
				_, existed := values[key]
				require.Equal(t, existed, tbl.Delete(key))
				delete(values, key)
				order = slices.DeleteFunc(order, func(k byte) bool { return k == key })
			}
			require.Equal(t, len(order), tbl.Len())
		}

		it, err := tbl.Iter(t.Context())
		require.NoError(t, err)
		defer it.Close()
		var got []byte
		for it.Next() {
			k, v, err := it.Get(t.Context())
			require.NoError(t, err)
			require.Equal(t, values[k], v)
			got = append(got, k)
		}
		require.True(t, slices.Equal(order, got), "want order %v, got %v", order, got)

		for k := range 256 {
			v, err := tbl.Get(t.Context(), byte(k))
			want, ok := values[byte(k)]
			if ok {
				require.NoError(t, err)
				require.Equal(t, want, v)
			} else {
				require.True(t, errors.Is(err, supervisor.ErrNotFound))
			}
		}
	})
}
