//go:build tools

// Package tools pins krew, the kubectl plugin manager: the dist test installs the release
// archive with it from the manifest `make dist` writes, as a user's `kubectl krew install` would.
package tools

import _ "sigs.k8s.io/krew/cmd/krew"
