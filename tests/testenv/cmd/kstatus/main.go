// Command kstatus classifies Kubernetes objects with kstatus (sigs.k8s.io/cli-utils/pkg/kstatus),
// the library behind Flux's health checks (`wait: true`, `healthChecks`) and `kubectl`-style
// status polling. It reads objects on stdin — a stream of JSON objects, or a single YAML
// document — and prints one JSON line per object: {"status": "...", "message": "..."}, where
// status is Current, InProgress, Failed or Terminating.
//
// Switchyard's tests run it on every observed version of a Workspace to prove that GitOps
// tools read the controller's status as intended.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	input, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	enc := json.NewEncoder(w)
	trimmed := bytes.TrimSpace(input)
	if len(trimmed) > 0 && trimmed[0] != '{' {
		doc, err := yaml.YAMLToJSON(trimmed)
		if err != nil {
			return fmt.Errorf("parsing YAML: %w", err)
		}
		trimmed = doc
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	for n := 1; ; n++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("object %d: %w", n, err)
		}
		// UnmarshalJSON keeps integers as int64, as the API machinery does; kstatus reads
		// metadata.generation and status.observedGeneration with NestedInt64.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return fmt.Errorf("object %d: %w", n, err)
		}
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("object %d: computing status: %w", n, err)
		}
		if err := enc.Encode(result{Status: res.Status.String(), Message: res.Message}); err != nil {
			return err
		}
	}
}
