"""Hostile inputs for every field that can reach a proxy config, a path or an argv.

Each entry is refused by every strict pattern of common.names (none is a valid app name,
host name, domain, label, address, health path, process type or env key). The shapes come
from config-injection bugs of real ingress controllers: CVE-2021-25742 (snippets),
CVE-2023-5043/5044 (annotation values closing a directive), CVE-2025-1974 and its siblings
(auth-url / auth-tls values smuggling `load_module` and `ssl_engine` into nginx.conf).
"""

from __future__ import annotations

CORPUS: tuple[str, ...] = (
    "",
    " ",
    "a b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x00b",
    "app;",
    "app; include /etc/passwd;",
    "app.example.com;\nserver_name evil.com",
    "app {",
    "app }",
    "}\nserver { listen 80; }\n#",
    "app'quote",
    'app"quote',
    "app`id`",
    "$host",
    "${PATH}",
    "app$remote_addr",
    "#comment",
    "app#x",
    "app\\x",
    "../../etc/passwd",
    "..",
    "/../../etc/passwd\n",
    "app/../x",
    "app%0aserver",
    "\u0430pp",  # Cyrillic a
    "app\u200b",  # zero-width space
    "\uff21\uff30\uff30",  # full-width
    "app.ex\u0430mple.com",
    "App",
    "-app-",
    "a" * 64,
    "a" * 64 + ".example.com",
    ("a" * 63 + ".") * 4 + "com",
    "*",
    "**.example.com",
    "a.*.example.com",
    "*example.com",
    "a..b",
    ".app",
    "app.",
    "app:8080",
    "http://x/#;}}}\nload_module /tmp/evil.so;",  # CVE-2025-1974 shape
    "x;}\nssl_engine /tmp/evil.so;\n#",  # CVE-2025-24514/1097 shape
    "https://x.com;\nlocation ~* ^/ { return 200 pwned; }",  # CVE-2023-5044 shape
    "/x;\n  }\n  location /admin { proxy_pass http://127.0.0.1:22; }#",  # CVE-2023-5043
    "content_by_lua_block { os.execute('id') }",  # CVE-2021-25742 shape
    "app\nacl evil hdr(host) -i x\nuse_backend evil if evil",  # HAProxy line injection
    "app http-request set-header X 1",
    "%[src]",
    "app%[req.hdr(host)]",
)
