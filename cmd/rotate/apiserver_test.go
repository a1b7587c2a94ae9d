package main

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
)

// leaseAPIServer is the least of a kube-apiserver the CLI tests need: the
// cluster lock's Lease (get, create, update, delete). Every other path is
// 404, as for an object that does not exist. It returns the kubeconfig
// `cluster:` entry (server and CA data) that reaches it.
func leaseAPIServer(t *testing.T) (cluster string) {
	t.Helper()
	const path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
	var mu sync.Mutex
	var lease *coordinationv1.Lease
	rv := 0
	var r0 *http.Request
	status := func(w http.ResponseWriter, code int, reason metav1.StatusReason) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Reason: reason, Code: int32(code),
			Message: string(reason) + ": " + r0.Method + " " + r0.URL.Path + " (" + r0.Header.Get("Content-Type") + ")"})
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		r0 = r
		if !strings.HasPrefix(r.URL.Path, path) {
			status(w, http.StatusNotFound, metav1.StatusReasonNotFound)
			return
		}
		reply := func(code int) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(lease)
		}
		store := func() bool {
			body, _ := io.ReadAll(r.Body)
			// client-go sends protobuf; it reads the JSON replies too.
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
			lp, ok := obj.(*coordinationv1.Lease)
			if err != nil || !ok {
				status(w, http.StatusBadRequest, metav1.StatusReasonBadRequest)
				return false
			}
			l := *lp
			if lease != nil && l.ResourceVersion != lease.ResourceVersion {
				status(w, http.StatusConflict, metav1.StatusReasonConflict)
				return false
			}
			rv++
			l.ResourceVersion, l.UID = strconv.Itoa(rv), types.UID("lease-uid")
			l.Kind, l.APIVersion = "Lease", "coordination.k8s.io/v1"
			lease = &l
			return true
		}
		switch {
		case r.Method == http.MethodPost && r.URL.Path == path:
			if lease != nil {
				status(w, http.StatusConflict, metav1.StatusReasonAlreadyExists)
			} else if store() {
				reply(http.StatusCreated)
			}
		case r.URL.Path != path+"/rotate-lock" || lease == nil:
			status(w, http.StatusNotFound, metav1.StatusReasonNotFound)
		case r.Method == http.MethodGet:
			reply(http.StatusOK)
		case r.Method == http.MethodPut:
			if store() {
				reply(http.StatusOK)
			}
		case r.Method == http.MethodDelete:
			lease = nil
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Success"})
		default:
			status(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed)
		}
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return `{server: "` + srv.URL + `", certificate-authority-data: ` + base64.StdEncoding.EncodeToString(ca) + `}`
}
