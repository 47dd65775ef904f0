package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The user the controller runs as: distroless's "nonroot".
const nonroot = 65532

// Where the SBOM and the LICENSE live in the image.
const docDir = "usr/share/doc/switchyard"

type buildFlags struct {
	binary, metadata, lock, license, caBundle string
	version, revision, created, source        string
	out, sbomOut                              string
}

func runBuild(args []string) error {
	var f buildFlags
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.StringVar(&f.binary, "binary", "", "the static switchyard binary")
	fs.StringVar(&f.metadata, "metadata", "", "`cargo metadata --format-version 1` output of the build, for the SBOM")
	fs.StringVar(&f.lock, "lock", "Cargo.lock", "Cargo.lock, for the packages' checksums")
	fs.StringVar(&f.license, "license", "LICENSE", "the LICENSE file")
	fs.StringVar(&f.caBundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates for TLS to providers")
	fs.StringVar(&f.version, "version", "", "the image's version (org.opencontainers.image.version)")
	fs.StringVar(&f.revision, "revision", "", "the source revision (org.opencontainers.image.revision)")
	fs.StringVar(&f.created, "created", "", "creation time, RFC 3339 (every time stamp in the image)")
	fs.StringVar(&f.source, "source", "https://github.com/switchyard-dev/switchyard", "the source repository")
	fs.StringVar(&f.out, "out", "", "the OCI image archive to write")
	fs.StringVar(&f.sbomOut, "sbom-out", "", "also write the SBOM here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for name, v := range map[string]string{"binary": f.binary, "metadata": f.metadata, "version": f.version, "revision": f.revision, "created": f.created, "out": f.out} {
		if v == "" {
			return fmt.Errorf("--%s is required", name)
		}
	}
	created, err := time.Parse(time.RFC3339, f.created)
	if err != nil {
		return fmt.Errorf("--created: %w", err)
	}
	created = created.UTC()
	sbom, err := buildSBOM(f.metadata, f.lock, f.version, created)
	if err != nil {
		return fmt.Errorf("SBOM: %w", err)
	}
	img, err := buildImage(f, sbom, created)
	if err != nil {
		return err
	}
	if err := writeArchive(img, f.out, f.version); err != nil {
		return fmt.Errorf("write %s: %w", f.out, err)
	}
	if f.sbomOut != "" {
		if err := os.WriteFile(f.sbomOut, sbom, 0o644); err != nil {
			return err
		}
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("switchyard-image: %s (%s)\n", f.out, digest)
	return nil
}

// file is one entry of the image's only layer.
type file struct {
	name     string
	mode     int64
	uid, gid int
	body     []byte
	dir      bool
}

func buildImage(f buildFlags, sbom []byte, created time.Time) (v1.Image, error) {
	read := func(path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		return b, nil
	}
	binary, err := read(f.binary)
	if err != nil {
		return nil, err
	}
	license, err := read(f.license)
	if err != nil {
		return nil, err
	}
	cas, err := read(f.caBundle)
	if err != nil {
		return nil, err
	}
	files := []file{
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\nnonroot:x:65532:\n")},
		// Resolve through /etc/hosts first, then DNS (the static glibc has both built in).
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/ssl", mode: 0o755, dir: true},
		{name: "etc/ssl/certs", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, body: cas},
		{name: "home", mode: 0o755, dir: true},
		{name: "home/nonroot", mode: 0o700, uid: nonroot, gid: nonroot, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "switchyard", mode: 0o755, body: binary},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/share", mode: 0o755, dir: true},
		{name: "usr/share/doc", mode: 0o755, dir: true},
		{name: docDir, mode: 0o755, dir: true},
		{name: docDir + "/LICENSE", mode: 0o644, body: license},
		{name: docDir + "/sbom.spdx.json", mode: 0o644, body: sbom},
	}
	layerTar, err := tarOf(files, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "switchyard-image build", Comment: "static switchyard binary, nonroot user, CA bundle, LICENSE, SBOM"},
	})
	if err != nil {
		return nil, err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":         "switchyard",
		"org.opencontainers.image.description":   "A Kubernetes controller that places Workspaces on compute providers and switches them safely",
		"org.opencontainers.image.version":       f.version,
		"org.opencontainers.image.revision":      f.revision,
		"org.opencontainers.image.created":       created.Format(time.RFC3339),
		"org.opencontainers.image.source":        f.source,
		"org.opencontainers.image.url":           f.source,
		"org.opencontainers.image.documentation": f.source + "#readme",
		"org.opencontainers.image.licenses":      "Apache-2.0",
		"dev.switchyard.sbom":                    "/" + docDir + "/sbom.spdx.json",
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Created = v1.Time{Time: created}
	cfg.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
		Entrypoint: []string{"/switchyard"},
		Cmd:        []string{"controller", "--leader-election"},
		Env:        []string{"PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		WorkingDir: "/",
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	annotated, ok := mutate.Annotations(img, labels).(v1.Image)
	if !ok {
		return nil, errors.New("annotating the manifest did not give an image")
	}
	return annotated, nil
}

// tarOf is a tar of files (in name order) with every time stamp at created.
func tarOf(files []file, created time.Time) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: created, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeArchive writes img as an OCI image layout, tagged version, packed into one tar at path.
func writeArchive(img v1.Image, path, version string) error {
	dir, err := os.MkdirTemp("", "switchyard-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	err = lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": version}))
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := tarDir(out, dir); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// tarDir writes the files under dir to w, in name order, without owners or time stamps of this
// machine, so the archive depends only on the image.
func tarDir(w io.Writer, dir string) error {
	var paths []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if info.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			continue
		}
		h.Typeflag, h.Size = tar.TypeReg, info.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}
