// Package compat proves ballot speaks etcd's v3 API with tools no one here
// wrote: etcd's clientv3 and its concurrency package unchanged, etcdctl
// built from its own module, and a differential test against a real etcd
// (the embed package) fed the same seeded operations.
//
// It is its own Go module so that etcd's server and tools are dependencies
// of these tests only, never of ballot. Run it with
//
//	cd compat && go test ./...
package compat
