package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A workspace with a root package "app", a normal dependency "lib" (which has a build
// dependency "cc"), and a dev dependency "testkit".
const metadata = `{
  "packages": [
    {"id": "app 0.1.0", "name": "app", "version": "0.1.0", "license": "Apache-2.0", "source": null},
    {"id": "lib 1.2.3", "name": "lib", "version": "1.2.3", "license": "MIT/Apache-2.0", "source": "registry+x"},
    {"id": "cc 1.0.0", "name": "cc", "version": "1.0.0", "license": "MIT", "source": "registry+x"},
    {"id": "testkit 0.9.0", "name": "testkit", "version": "0.9.0", "license": null, "source": "registry+x"}
  ],
  "resolve": {"root": "app 0.1.0", "nodes": [
    {"id": "app 0.1.0", "deps": [
      {"pkg": "lib 1.2.3", "dep_kinds": [{"kind": null}]},
      {"pkg": "testkit 0.9.0", "dep_kinds": [{"kind": "dev"}]}]},
    {"id": "lib 1.2.3", "deps": [{"pkg": "cc 1.0.0", "dep_kinds": [{"kind": "build"}]}]},
    {"id": "cc 1.0.0", "deps": []},
    {"id": "testkit 0.9.0", "deps": []}
  ]}
}`

const lock = `[[package]]
name = "app"
version = "0.1.0"

[[package]]
name = "lib"
version = "1.2.3"
source = "registry+x"
checksum = "aaaa"
`

func fixture(t *testing.T) buildFlags {
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return buildFlags{
		binary: write("bin", "\x7fELF not really"), metadata: write("meta.json", metadata), lock: write("Cargo.lock", lock),
		license: write("LICENSE", "Apache"), caBundle: write("ca.crt", "-----BEGIN CERTIFICATE-----"),
		version: "1.0.0", revision: "abc", created: "2026-01-02T03:04:05Z", source: "https://example.invalid/app",
		out: filepath.Join(dir, "image.tar"),
	}
}

func build(t *testing.T, f buildFlags) {
	args := []string{"--binary", f.binary, "--metadata", f.metadata, "--lock", f.lock, "--license", f.license,
		"--ca-bundle", f.caBundle, "--version", f.version, "--revision", f.revision, "--created", f.created,
		"--source", f.source, "--out", f.out}
	if err := runBuild(args); err != nil {
		t.Fatal(err)
	}
}

func TestTheSBOMListsWhatIsLinkedIn(t *testing.T) {
	f := fixture(t)
	raw, err := buildSBOM(f.metadata, f.lock, "1.0.0", mustTime(t, f.created))
	if err != nil {
		t.Fatal(err)
	}
	var doc spdxDocument
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	names := map[string]spdxPackage{}
	for _, p := range doc.Packages {
		names[p.Name] = p
	}
	if len(names) != 2 || names["app"].Name == "" || names["lib"].Name == "" {
		t.Fatalf("want app and lib only (no build or dev dependencies), got %v", names)
	}
	lib := names["lib"]
	if lib.LicenseDeclared != "MIT OR Apache-2.0" || len(lib.Checksums) != 1 || lib.Checksums[0].ChecksumValue != "aaaa" {
		t.Fatalf("lib: %+v", lib)
	}
	if lib.ExternalRefs[0].ReferenceLocator != "pkg:cargo/lib@1.2.3" {
		t.Fatalf("purl: %+v", lib.ExternalRefs)
	}
	want := spdxRelationship{names["app"].SPDXID, "DEPENDS_ON", lib.SPDXID}
	found := false
	for _, r := range doc.Relationships {
		found = found || r == want
	}
	if doc.SPDXVersion != "SPDX-2.3" || !found {
		t.Fatalf("relationships: %+v", doc.Relationships)
	}
}

func TestTheArchiveUnpacksToANonrootImageWithoutAShell(t *testing.T) {
	f := fixture(t)
	build(t, f)
	dir := t.TempDir()
	rootfs, config := filepath.Join(dir, "rootfs"), filepath.Join(dir, "config.json")
	if err := runUnpack([]string{"--archive", f.out, "--rootfs", rootfs, "--config", config}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct {
			User       string
			Entrypoint []string
			Labels     map[string]string
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/switchyard" {
		t.Fatalf("config: %+v", cfg.Config)
	}
	if cfg.Config.Labels["org.opencontainers.image.version"] != "1.0.0" || cfg.Config.Labels["org.opencontainers.image.revision"] != "abc" {
		t.Fatalf("labels: %v", cfg.Config.Labels)
	}
	for _, path := range []string{"switchyard", "etc/passwd", "usr/share/doc/switchyard/sbom.spdx.json", "usr/share/doc/switchyard/LICENSE"} {
		if _, err := os.Stat(filepath.Join(rootfs, path)); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	for _, shell := range []string{"bin/sh", "bin/bash", "bin/busybox"} {
		if _, err := os.Stat(filepath.Join(rootfs, shell)); err == nil {
			t.Errorf("%s is in the image", shell)
		}
	}
	if info, err := os.Stat(filepath.Join(rootfs, "tmp")); err != nil || info.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp: %v %v", info, err)
	}
}

func TestTheSameInputsGiveTheSameArchive(t *testing.T) {
	f := fixture(t)
	build(t, f)
	first, err := os.ReadFile(f.out)
	if err != nil {
		t.Fatal(err)
	}
	build(t, f)
	second, err := os.ReadFile(f.out)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != string(second) {
		t.Fatal("two builds of the same inputs differ")
	}
}

func mustTime(t *testing.T, text string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, text)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
