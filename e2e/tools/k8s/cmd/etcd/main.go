// Command etcd is the stock etcd server, built from its Go module at the
// version Kubernetes itself pins, so the local cluster needs no release binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
