package steps

// Check ids name what one verify check proves about one target, so that a
// finding at verify can be compared with the same check before the run
// (the baseline). They are stored in state files: do not rename them.
func checkAPIServer(node string) string         { return "apiserver/" + node }
func checkNodeProxy(node string) string         { return "node-proxy/" + node }
func checkKubeletClientCert(node string) string { return "kubelet-client-cert/" + node }
func checkNodeReady(node string) string         { return "node-ready/" + node }
func checkAPIService(name string) string        { return "apiservice/" + name }
