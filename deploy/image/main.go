// Command switchyard-image builds Switchyard's container image without a container engine, with
// go-containerregistry, and reads it back the way a runtime does.
//
//	switchyard-image build  --binary BIN --metadata METADATA.json --lock Cargo.lock --license LICENSE \
//	                        --version V --revision SHA --created RFC3339 --out IMAGE.tar [--sbom-out SBOM.json]
//	switchyard-image unpack --archive IMAGE.tar --rootfs DIR --config CONFIG.json
//
// build writes an OCI image archive: a tar of an OCI image layout (index.json, oci-layout,
// blobs/), which `skopeo copy oci-archive:…`, `podman load` and `docker load` (25+) read, and
// `crane push` pushes once unpacked. The image is one layer: the static binary, a passwd and group
// with the nonroot user (65532), a CA bundle, nsswitch.conf, the LICENSE and an SPDX SBOM of the
// binary's Rust dependencies (also written beside the archive). No shell, no libc. Every time
// stamp is --created, so the same inputs give the same digest.
//
// unpack flattens the image's layers into DIR (as mutate.Extract does for a runtime) and writes
// its config, so that tests can check what the archive holds rather than what went into it.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: switchyard-image build|unpack [flags] (see the package comment)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = runBuild(os.Args[2:])
	case "unpack":
		err = runUnpack(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: build or unpack", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "switchyard-image %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
