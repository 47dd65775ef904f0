package main

// The fuller cluster of `--nodes N`: kube-controller-manager and kube-scheduler (built from the
// same Kubernetes as the apiserver, run as child processes) and KWOK with N fake nodes.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

//go:embed kwok-stages.yaml
var kwokStages []byte

// maxNodes bounds --nodes: each fake node costs a Lease renewal every few seconds.
const maxNodes = 50

// nodeLabel marks the nodes KWOK plays; KWOK manages only those.
const nodeLabel = "switchyard.dev/testenv-node"

// component is one child process of the fuller cluster.
type component struct {
	name string
	cmd  *exec.Cmd
	// done is closed once the process has exited; err is then its exit status.
	done chan struct{}
	err  error
}

// startComponent runs binDir/name with args, its output on ours. The child gets SIGKILL if
// this process dies (Pdeathsig), so a crashed testenv leaves nothing behind. Pdeathsig fires
// when the spawning OS thread exits, so the goroutine that starts the child keeps its thread
// locked until the child has exited.
func startComponent(binDir, name string, args []string) (*component, error) {
	path := filepath.Join(binDir, name)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s is missing (build it with tests/testenv/build.sh): %w", path, err)
	}
	c := &component{name: name, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		cmd := exec.Command(path, args...)
		cmd.Stdout = os.Stderr
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", name, err)
			return
		}
		c.cmd = cmd
		started <- nil
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// stop asks the component to exit (SIGTERM), and kills it after 10 s.
func (c *component) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// fullerCluster is what --nodes adds to the control plane.
type fullerCluster struct {
	components []*component
	stopOnce   sync.Once
	// stopping is closed when stop begins.
	stopping chan struct{}
}

// stop stops the components, once, however often it is called.
func (f *fullerCluster) stop() {
	f.stopOnce.Do(func() {
		close(f.stopping)
		// Reverse order: KWOK and the scheduler before the controller manager.
		for i := len(f.components) - 1; i >= 0; i-- {
			f.components[i].stop()
		}
	})
}

// watch reports on stderr any component that exits before stop: the cluster is then not whole.
func (f *fullerCluster) watch() {
	for _, c := range f.components {
		go func(c *component) {
			select {
			case <-c.done:
				select {
				case <-f.stopping: // it was asked to
				default:
					fmt.Fprintf(os.Stderr, "switchyard-testenv: %s exited unexpectedly: %v\n", c.name, c.err)
				}
			case <-f.stopping:
			}
		}(c)
	}
}

// startFullerCluster starts the controller manager, the scheduler and KWOK against the running
// apiserver, creates the fake nodes and waits until they are Ready and the controller manager
// works (the `default` ServiceAccount exists).
func startFullerCluster(o options, dir, pki, kubeconfig string) (*fullerCluster, error) {
	binDir := o.binDir
	if binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("locate the component binaries: %w", err)
		}
		binDir = filepath.Dir(exe)
	}
	stages := filepath.Join(dir, "kwok-stages.yaml")
	if err := os.WriteFile(stages, kwokStages, 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", stages, err)
	}
	v := "--v=" + strconv.Itoa(o.verbosity)
	specs := []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", []string{
			"--kubeconfig=" + kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			"--controllers=*",
			"--use-service-account-credentials=false",
			"--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
			"--root-ca-file=" + filepath.Join(pki, "apiserver.crt"),
			"--cluster-name=testenv",
			v,
		}},
		{"kube-scheduler", []string{"--kubeconfig=" + kubeconfig, "--leader-elect=false", "--secure-port=0", v}},
		{"kwok", []string{
			"--kubeconfig=" + kubeconfig,
			"--config=" + stages,
			"--manage-all-nodes=false",
			"--manage-nodes-with-label-selector=" + nodeLabel + "=kwok",
			// Pod IPs are only written into status; nothing is ever sent to them.
			"--cidr=10.244.0.0/16",
			"--node-ip=10.243.0.1",
			"--node-lease-duration-seconds=40",
		}},
	}
	f := &fullerCluster{stopping: make(chan struct{})}
	for _, s := range specs {
		c, err := startComponent(binDir, s.name, s.args)
		if err != nil {
			f.stop()
			return nil, err
		}
		f.components = append(f.components, c)
	}
	if err := awaitNodes(kubeconfig, o.nodes); err != nil {
		f.stop()
		return nil, err
	}
	return f, nil
}

// awaitNodes creates n fake nodes and waits until they are Ready and the controller manager
// has created the `default` ServiceAccount of namespace default.
func awaitNodes(kubeconfig string, n int) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		if _, err := client.CoreV1().Nodes().Create(ctx, fakeNode(fmt.Sprintf("kwok-node-%d", i)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node kwok-node-%d: %w", i, err)
		}
	}
	for {
		ready, err := readyNodes(ctx, client)
		sa, saErr := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil && ready >= n && saErr == nil && sa != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("the fake nodes were not Ready, or kube-controller-manager did not work, within 2m")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func readyNodes(ctx context.Context, client kubernetes.Interface) (int, error) {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: nodeLabel + "=kwok"})
	if err != nil {
		return 0, err
	}
	ready := 0
	for _, node := range nodes.Items {
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready++
			}
		}
	}
	return ready, nil
}

// fakeNode is a Node for KWOK to play: roomy enough for any test's Pods.
func fakeNode(name string) *corev1.Node {
	amounts := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("128Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				nodeLabel:                "kwok",
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
		},
		Status: corev1.NodeStatus{Capacity: amounts, Allocatable: amounts},
	}
}
