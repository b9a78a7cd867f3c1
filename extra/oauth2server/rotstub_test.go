package oauth2server_test

import (
	"context"
	"net/http"
)

type rotProxy struct{}

func (*rotProxy) serve(http.ResponseWriter, *http.Request) {}

func rotChild(context.Context, *procConf) (func(context.Context) any, func(), error) { return nil, nil, nil }
