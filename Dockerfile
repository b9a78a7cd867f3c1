# Builds one of the example programs: docker build --build-arg PROGRAM=server .
# A program of a nested module (a directory with its own go.mod) names it:
#   docker build --build-arg MODULE=extra/otel --build-arg PROGRAM=server .
# (docker-compose.yml builds extra/otel's examples/server and examples/fakeupstream.)
FROM golang:1.26 AS build
ARG MODULE=.
ARG PROGRAM=server
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# A nested module's own dependencies are downloaded here, with the build.
RUN cd "${MODULE}" && CGO_ENABLED=0 go build -trimpath -o /out/app "./examples/${PROGRAM}"

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
