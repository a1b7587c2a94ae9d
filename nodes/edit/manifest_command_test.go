package edit

import "testing"

// TestContainerCommand: a container's command as written, nil for one
// that gives only args, an error for a container the manifest lacks.
func TestContainerCommand(t *testing.T) {
	cmd, err := ContainerCommand([]byte(manifest), "kube-controller-manager")
	if err != nil || len(cmd) != 4 || cmd[0] != "kube-controller-manager" {
		t.Errorf("command = %q, %v", cmd, err)
	}
	if cmd, err := ContainerCommand([]byte(manifest), "sidecar"); err != nil || cmd != nil {
		t.Errorf("args only: %q, %v", cmd, err)
	}
	if _, err := ContainerCommand([]byte(manifest), "nope"); err == nil {
		t.Error("unknown container accepted")
	}
}
