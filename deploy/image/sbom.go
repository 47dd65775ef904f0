package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// The parts of `cargo metadata --format-version 1` the SBOM needs.
type cargoMetadata struct {
	Packages []struct {
		ID      string  `json:"id"`
		Name    string  `json:"name"`
		Version string  `json:"version"`
		License *string `json:"license"`
		Source  *string `json:"source"`
	} `json:"packages"`
	Resolve struct {
		Root  string `json:"root"`
		Nodes []struct {
			ID   string `json:"id"`
			Deps []struct {
				Pkg      string `json:"pkg"`
				DepKinds []struct {
					Kind *string `json:"kind"`
				} `json:"dep_kinds"`
			} `json:"deps"`
		} `json:"nodes"`
	} `json:"resolve"`
}

type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name             string            `json:"name"`
	SPDXID           string            `json:"SPDXID"`
	VersionInfo      string            `json:"versionInfo"`
	DownloadLocation string            `json:"downloadLocation"`
	FilesAnalyzed    bool              `json:"filesAnalyzed"`
	LicenseConcluded string            `json:"licenseConcluded"`
	LicenseDeclared  string            `json:"licenseDeclared"`
	CopyrightText    string            `json:"copyrightText"`
	Checksums        []spdxChecksum    `json:"checksums,omitempty"`
	ExternalRefs     []spdxExternalRef `json:"externalRefs,omitempty"`
}

type spdxChecksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

type spdxExternalRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// buildSBOM is an SPDX 2.3 document of the packages linked into the binary: the dependency
// tree from the root package along normal dependencies (not build or dev ones), as the build
// resolved it (metadataPath: `cargo metadata` of the same features and target), with each
// crate's checksum from lockPath.
func buildSBOM(metadataPath, lockPath, version string, created time.Time) ([]byte, error) {
	raw, err := os.ReadFile(metadataPath)
	if err != nil {
		return nil, err
	}
	var meta cargoMetadata
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("%s: %w", metadataPath, err)
	}
	checksums, lockDigest, err := lockChecksums(lockPath)
	if err != nil {
		return nil, err
	}
	packages := map[string]int{}
	for i, p := range meta.Packages {
		packages[p.ID] = i
	}
	deps := map[string][]string{}
	for _, n := range meta.Resolve.Nodes {
		for _, d := range n.Deps {
			for _, k := range d.DepKinds {
				if k.Kind == nil { // a normal dependency: linked into the binary
					deps[n.ID] = append(deps[n.ID], d.Pkg)
					break
				}
			}
		}
	}
	if _, ok := packages[meta.Resolve.Root]; !ok {
		return nil, fmt.Errorf("%s: no root package (run cargo metadata in the workspace)", metadataPath)
	}
	// Everything reachable from the root.
	seen := map[string]bool{meta.Resolve.Root: true}
	queue := []string{meta.Resolve.Root}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		for _, d := range deps[id] {
			if !seen[d] {
				seen[d] = true
				queue = append(queue, d)
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)

	spdxID := func(id string) string {
		p := meta.Packages[packages[id]]
		return "SPDXRef-Package-" + sanitize(p.Name) + "-" + sanitize(p.Version)
	}
	doc := spdxDocument{
		SPDXVersion:       "SPDX-2.3",
		DataLicense:       "CC0-1.0",
		SPDXID:            "SPDXRef-DOCUMENT",
		Name:              "switchyard-" + version,
		DocumentNamespace: "https://github.com/switchyard-dev/switchyard/spdx/switchyard-" + version + "-" + lockDigest[:16],
		CreationInfo:      spdxCreationInfo{Created: created.Format(time.RFC3339), Creators: []string{"Tool: switchyard-image"}},
	}
	for _, id := range ids {
		p := meta.Packages[packages[id]]
		pkg := spdxPackage{
			Name:             p.Name,
			SPDXID:           spdxID(id),
			VersionInfo:      p.Version,
			DownloadLocation: "NOASSERTION",
			LicenseConcluded: "NOASSERTION",
			LicenseDeclared:  spdxLicense(p.License),
			CopyrightText:    "NOASSERTION",
		}
		if p.Source != nil {
			pkg.ExternalRefs = []spdxExternalRef{{"PACKAGE-MANAGER", "purl", "pkg:cargo/" + p.Name + "@" + p.Version}}
		}
		if sum, ok := checksums[p.Name+" "+p.Version]; ok {
			pkg.Checksums = []spdxChecksum{{"SHA256", sum}}
		}
		if id == meta.Resolve.Root {
			pkg.DownloadLocation = "git+https://github.com/switchyard-dev/switchyard"
			doc.Relationships = append(doc.Relationships, spdxRelationship{"SPDXRef-DOCUMENT", "DESCRIBES", pkg.SPDXID})
		}
		doc.Packages = append(doc.Packages, pkg)
		for _, d := range deps[id] {
			doc.Relationships = append(doc.Relationships, spdxRelationship{pkg.SPDXID, "DEPENDS_ON", spdxID(d)})
		}
	}
	return json.MarshalIndent(doc, "", "  ")
}

// lockChecksums maps "name version" to the sha256 Cargo.lock records for it, and gives the
// lock file's own digest.
func lockChecksums(path string) (map[string]string, string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(raw)
	out := map[string]string{}
	var name, version string
	scanner := bufio.NewScanner(strings.NewReader(string(raw)))
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		key, value, ok := strings.Cut(line, " = ")
		value = strings.Trim(value, `"`)
		switch {
		case line == "[[package]]":
			name, version = "", ""
		case ok && key == "name":
			name = value
		case ok && key == "version":
			version = value
		case ok && key == "checksum":
			out[name+" "+version] = value
		}
	}
	return out, hex.EncodeToString(sum[:]), scanner.Err()
}

// spdxLicense turns a Cargo license field into an SPDX expression ("MIT/Apache-2.0" is the old
// way of writing "MIT OR Apache-2.0").
func spdxLicense(license *string) string {
	if license == nil || strings.TrimSpace(*license) == "" {
		return "NOASSERTION"
	}
	return strings.ReplaceAll(strings.TrimSpace(*license), "/", " OR ")
}

// sanitize keeps what an SPDX identifier may hold: letters, digits, '.' and '-'.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '-'
	}, s)
}
