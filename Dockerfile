# message-service images.
#   docker build -t message-service .                              # the gateway (default target)
#   docker build --target dev-api -t message-service-dev-api .     # the development main API
# docker-compose.yml builds both.

ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: every dependency, TypeScript -> dist/ ------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the install scripts are esbuild's (for tsx, unused in images), @scarf/scarf's
# (telemetry, through the dev dependency @asyncapi/parser: not wanted) and those of ws's native
# accelerators bufferutil / utf-8-validate. Those ship linux-x64 prebuilds that load without a
# script, and fall back to plain JavaScript elsewhere (e.g. arm64), so this slim image never
# needs python/make/g++.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY dev-api ./dev-api
RUN npm run build

# ---- dev-api: the development main API; keeps dev dependencies (it needs jose) -------------------
FROM build AS dev-api
ENV HOST=0.0.0.0 \
    PORT=8000
USER node
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \
  CMD node -e "fetch('http://127.0.0.1:${PORT:-8000}/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
STOPSIGNAL SIGTERM
CMD ["node", "dist/dev-api/main.js"]

# ---- runtime (default target): production dependencies and dist/ only, as the user node ---------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
# The gateway only: dist/dev-api needs dev dependencies (jose) this stage does not install.
COPY --from=build /app/dist/src ./dist/src
# Files stay owned by root: the gateway only reads them.
USER node
EXPOSE 3000
# Shell form so ${APP_PORT} is read when the check runs; node's global fetch (no curl in slim).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:${APP_PORT:-3000}/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
# The gateway drains on SIGTERM in at most SHUTDOWN_TIMEOUT_MS + UPSTREAM_TIMEOUT_MS + 4.25 s: give it
# + 5 s (20 s by default), e.g. `docker stop -t 20` or `stop_grace_period: 20s` in compose.
# No init needed: main.ts catches the stop signals before it loads the gateway (node as PID 1
# ignores a signal nobody handles); one during start-up drains it once started. Only Node's own
# first tens of milliseconds are uncovered, which an init (`docker run --init`, `init: true`) closes too.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/main.js"]
