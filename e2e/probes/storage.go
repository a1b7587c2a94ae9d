package probes

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The storage probe: every second it writes a counter into ConfigMap
// <namespace>/storage-probe and reads it back (a quorum read), through the
// apiservers with the primary admin credentials. Each apiserver talks to
// its own etcd member (kubeadm's stacked etcd), so one write and read is
// tried on every apiserver in turn, starting with a different one each
// tick: an apiserver restarting or a member restarting under it is not a
// failure while another one stores and returns the value. A tick fails
// only when no apiserver could: etcd lost quorum, or storage failed
// cluster-wide. Every tick is one request in the report (target
// "write+read"); the attempts that failed before one succeeded are events.

// ProbeStorage is the storage probe's name.
const ProbeStorage = "storage"

const storageProbeName = "storage-probe"

// storageTarget is the storage probe's one target in the report.
const storageTarget = "write+read through any apiserver"

func (r *Runner) startStorage(ctx context.Context) {
	client := credClient(r.primary)
	var eps []endpoint
	for _, ep := range r.endpoints {
		if ep.direct {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		eps = r.endpoints
	}
	seq, next := 0, 0
	r.goLoop(ctx, ProbeStorage, r.opts.Interval, func(ctx context.Context) {
		seq++
		now := time.Now()
		var errs []string
		for i := range eps {
			ep := eps[(next+i)%len(eps)]
			err := r.storeAndRead(ctx, client, ep, seq)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				if len(errs) > 0 {
					r.rec.event(now, ProbeStorage, storageTarget, "stored on "+ep.name+" after: "+strings.Join(errs, "; "))
				}
				r.rec.result(now, ProbeStorage, storageTarget, "", "", "")
				next++
				return
			}
			errs = append(errs, ep.name+": "+err.Error())
		}
		next++
		r.rec.result(now, ProbeStorage, storageTarget, Other, strings.Join(errs, "; "), "no apiserver could write and read back the value")
	})
}

// storeAndRead writes seq through ep (update, or create the first time)
// and reads it back.
func (r *Runner) storeAndRead(ctx context.Context, client func(context.Context, endpoint) (*http.Client, error), ep endpoint, seq int) error {
	c, err := client(ctx, ep)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*r.opts.RequestTimeout)
	defer cancel()
	ns := r.opts.Namespace
	base := ep.base + "/api/v1/namespaces/" + ns + "/configmaps"
	obj, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": storageProbeName, "namespace": ns},
		"data":     map[string]string{"seq": strconv.Itoa(seq)},
	})
	status, body, err := doRequest(rctx, c, http.MethodPut, base+"/"+storageProbeName, obj)
	if err == nil && status == http.StatusNotFound {
		status, body, err = doRequest(rctx, c, http.MethodPost, base, obj)
	}
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return fmt.Errorf("write: %s", describe(nil, status, body))
	}
	status, body, err = doGet(rctx, c, base+"/"+storageProbeName)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("read: %s", describe(nil, status, body))
	}
	var got struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		return fmt.Errorf("read: %v", err)
	}
	if got.Data["seq"] != strconv.Itoa(seq) {
		return fmt.Errorf("read back seq %q, wrote %d", got.Data["seq"], seq)
	}
	return nil
}
