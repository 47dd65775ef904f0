// Command switchyard-testenv runs a real single-node Kubernetes control plane on loopback:
// an embedded etcd and kube-apiserver in one process, with RBAC on and a cluster-admin
// kubeconfig written to DIR/kubeconfig once /readyz answers. With --nodes N it also runs
// kube-controller-manager, kube-scheduler and KWOK with N fake nodes (cluster.go), and is ready
// once those nodes are. It runs until SIGINT/SIGTERM, then stops everything and removes DIR's
// data unless --keep is given.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/util/cert"
	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const host = "127.0.0.1"

type options struct {
	dir           string
	apiserverPort int
	etcdPort      int
	keep          bool
	stdinLifeline bool
	verbosity     int
	nodes         int
	binDir        string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for etcd data, certificates and the kubeconfig (required)")
	flag.IntVar(&o.apiserverPort, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0 picks a free one)")
	flag.IntVar(&o.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (0 picks a free one)")
	flag.BoolVar(&o.keep, "keep", false, "keep DIR's etcd data and certificates after shutdown")
	flag.IntVar(&o.verbosity, "v", 0, "kube-apiserver log verbosity")
	flag.IntVar(&o.nodes, "nodes", 0, fmt.Sprintf("also run kube-controller-manager, kube-scheduler and KWOK with this many fake nodes (0-%d; 0: the bare control plane)", maxNodes))
	flag.StringVar(&o.binDir, "bin-dir", "", "folder of kube-controller-manager, kube-scheduler and kwok for --nodes (default: this program's folder)")
	flag.BoolVar(&o.stdinLifeline, "stdin-lifeline", false, "shut down when standard input closes (so a test process that dies takes the control plane with it)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "switchyard-testenv: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.dir == "" {
		return errors.New("--dir is required")
	}
	if o.nodes < 0 || o.nodes > maxNodes {
		return fmt.Errorf("--nodes must be 0-%d, not %d", maxNodes, o.nodes)
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return fmt.Errorf("directory %q: %w", o.dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("directory %q is unusable: %w", dir, err)
	}
	probe := filepath.Join(dir, ".write-test")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return fmt.Errorf("directory %q is not writable: %w", dir, err)
	}
	_ = os.Remove(probe)

	// Ports: a given port must be free now; otherwise the kernel picks one.
	apiPort, err := pickPort(o.apiserverPort, "kube-apiserver")
	if err != nil {
		return err
	}
	etcdClientPort, err := pickPort(o.etcdPort, "etcd client")
	if err != nil {
		return err
	}
	etcdPeerPort, err := pickPort(0, "etcd peer")
	if err != nil {
		return err
	}

	pki := filepath.Join(dir, "pki")
	token, err := writeCredentials(pki)
	if err != nil {
		return err
	}
	cleanup := func() {
		if !o.keep {
			_ = os.RemoveAll(filepath.Join(dir, "etcd"))
			_ = os.RemoveAll(pki)
			_ = os.Remove(filepath.Join(dir, "kubeconfig"))
		}
	}
	defer cleanup()

	etcd, err := startEtcd(filepath.Join(dir, "etcd"), etcdClientPort, etcdPeerPort)
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		<-etcd.Server.StopNotify()
	}()

	server := fmt.Sprintf("https://%s:%d", host, apiPort)
	// The garbage collector runs only in the fuller cluster's controller manager; the apiserver's
	// flag must agree with it (it decides whether deletes may orphan dependents).
	gc := "--enable-garbage-collector=" + strconv.FormatBool(o.nodes > 0)
	// The apiserver owns SIGINT/SIGTERM handling; when it returns, etcd is closed above.
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs([]string{
		"--etcd-servers=" + fmt.Sprintf("http://%s:%d", host, etcdClientPort),
		"--bind-address=" + host,
		"--advertise-address=" + host,
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--cert-dir=" + pki,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--token-auth-file=" + filepath.Join(pki, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--disable-admission-plugins=ServiceAccount",
		gc,
		"--v=" + strconv.Itoa(o.verbosity),
	})

	// The fuller cluster, once it runs. Its components hold watches open, and the apiserver's
	// graceful shutdown waits (up to a minute) for their connections to close: so on a shutdown
	// request they are stopped first.
	var cluster atomic.Pointer[fullerCluster]
	stopCluster := func() {
		if c := cluster.Load(); c != nil {
			c.stop()
		}
	}
	if o.stdinLifeline {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stopCluster()
			genericapiserver.RequestShutdown()
		}()
	}
	if o.nodes > 0 {
		// The apiserver handles these signals itself; this only stops the components as well.
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			<-signals
			stopCluster()
		}()
	}

	ready := make(chan error, 1)
	go func() { ready <- awaitReady(server, pki, token, dir) }()
	exited := make(chan int, 1)
	go func() { exited <- cli.Run(cmd) }()

	select {
	case err := <-ready:
		if err != nil {
			return err
		}
	case code := <-exited:
		return fmt.Errorf("kube-apiserver exited with code %d before it was ready", code)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if o.nodes > 0 {
		started, err := startFullerCluster(o, dir, pki, kubeconfig)
		if err != nil {
			genericapiserver.RequestShutdown()
			<-exited
			return err
		}
		started.watch()
		cluster.Store(started)
		defer started.stop()
	}
	fmt.Printf("ready %s\n", kubeconfig)
	if code := <-exited; code != 0 {
		return fmt.Errorf("kube-apiserver exited with code %d", code)
	}
	return nil
}

// pickPort returns want if it is free on 127.0.0.1, or a free port when want is 0.
func pickPort(want int, what string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(want)))
	if err != nil {
		return 0, fmt.Errorf("%s port %d on %s is not available: %w", what, want, host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeCredentials writes the serving certificate, the service-account key and a token file
// whose one user is in system:masters, and returns that token.
func writeCredentials(pki string) (string, error) {
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", pki, err)
	}
	certPEM, keyPEM, err := cert.GenerateSelfSignedCertKey(host, []net.IP{net.ParseIP(host)}, []string{"localhost"})
	if err != nil {
		return "", fmt.Errorf("generate serving certificate: %w", err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("generate service-account key: %w", err)
	}
	saPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)})
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	token := hex.EncodeToString(raw)
	files := map[string][]byte{
		"apiserver.crt": certPEM,
		"apiserver.key": keyPEM,
		"sa.key":        saPEM,
		"tokens.csv":    []byte(token + ",admin,admin,system:masters\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pki, name), data, 0o600); err != nil {
			return "", fmt.Errorf("write %s: %w", name, err)
		}
	}
	return token, nil
}

func startEtcd(dataDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dataDir
	cfg.Name = "testenv"
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	// A throwaway test store: durability is not worth the fsync latency.
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd did not become ready within 60s")
	}
}

// awaitReady polls /readyz until it answers 200, then writes the kubeconfig atomically.
func awaitReady(server, pki, token, dir string) error {
	caPEM, err := os.ReadFile(filepath.Join(pki, "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("read serving certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("serving certificate is not valid PEM")
	}
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("kube-apiserver did not become ready within 3m")
		case <-time.After(100 * time.Millisecond):
		}
	}
	return writeKubeconfig(dir, server, caPEM, token)
}

func writeKubeconfig(dir, server string, caPEM []byte, token string) error {
	ca := base64.StdEncoding.EncodeToString(caPEM)
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
    namespace: default
current-context: testenv
`, server, ca, token)
	tmp := filepath.Join(dir, ".kubeconfig.tmp")
	if err := os.WriteFile(tmp, []byte(kubeconfig), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "kubeconfig")); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
