//go:build tools

// Package tools pins the S3 server the test suite builds: versitygw with its posix backend
// (github.com/versity/versitygw/cmd/versitygw), built by build.py into ~/.cache/mlvisor/objectstore/.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
