# Builds one of the example programs: docker build --build-arg PROGRAM=server .
# (docker-compose.yml builds examples/server and examples/fakeupstream.)
FROM golang:1.26 AS build
ARG PROGRAM=server
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/app ./examples/${PROGRAM}

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
