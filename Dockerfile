# asyncgate: build with cgo (the SQL classifier links libpg_query), run on a slim Debian.
#   docker build -t asyncgate .
#   docker run -p 6432:6432 -p 9127:9127 asyncgate --listen 0.0.0.0:6432 --metrics-listen 0.0.0.0:9127 --database …
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o /out/asyncgate ./cmd/asyncgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --uid 6432 --home-dir /nonexistent --shell /usr/sbin/nologin asyncgate
COPY --from=build /out/asyncgate /usr/local/bin/asyncgate
USER asyncgate
# clients; /metrics, /healthz and /readyz (when started with --metrics-listen 0.0.0.0:9127)
EXPOSE 6432 9127
# SIGTERM lets running transactions finish (--shutdown-timeout); give it the time in `docker stop -t`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/asyncgate"]
CMD ["--help"]
