// The browser half of tests/serve/browser.sh: Debian's Chromium, headless, driven by playwright-core
// against the ktla-serve instances browser.sh started. Prints TAP lines without numbers
// ("ok - NAME", "not ok - NAME", "#   detail"); browser.sh numbers and counts them, and checks the
// server's side (access log, descriptors) once this has closed the browser. The last line is
// "# browser.mjs: done": without it browser.sh knows the script died half-way.
//
// Environment (all set by browser.sh):
//   KTLA_BROWSER_MODULES  the directory holding node_modules/playwright-core
//   CHROMIUM              the browser binary (/usr/bin/chromium)
//   URL                   the main server (--charset left at its default, utf-8)
//   URL_LATIN1            a server of the same tree started with --charset iso-8859-1
//   ROOT                  the served tree, for the expected bytes
//   BIG_SHA256            sha256sum of big.bin
//   WAV_SECONDS           tone.wav's length in seconds
//   EXPECT_PROTO          what nextHopProtocol must say: h2, or http/1.1 (browser.sh's argument)
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`browser.mjs: ${name} is not set (run it through tests/serve/browser.sh)`);
    return v;
};
// The modules live in a cache outside the tree (browser.sh installs them there), where an ES
// import specifier would not look; require from that directory finds them.
const requireCached = createRequire(join(env('KTLA_BROWSER_MODULES'), '/'));
const { chromium } = requireCached('playwright-core');
const url = env('URL');
const urlLatin1 = env('URL_LATIN1');
const root = env('ROOT');
const bigSha = env('BIG_SHA256');
const wavSeconds = Number(env('WAV_SECONDS'));
const expectProto = env('EXPECT_PROTO');

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');
const file = (name) => readFileSync(join(root, name));
const sizeOf = (name) => {
    try {
        return statSync(join(root, name)).size;
    } catch {
        return null;
    }
};

// check NAME PROBLEMS: one TAP line; the problems, if any, are its detail.
function check(name, problems) {
    if (problems.length === 0) {
        console.log(`ok - ${name}`);
        return;
    }
    console.log(`not ok - ${name}`);
    for (const line of problems.join('\n').split('\n').slice(0, 12)) console.log(`#   ${line}`);
}
const info = (text) => console.log(`# ${text}`);

// A wait on the browser that cannot hang the suite: page.evaluate has no deadline of its own.
function within(ms, promise, what) {
    let timer;
    const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
    });
    return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// A promise from an event handler, awaited later if the section gets that far: if it fails first,
// the rejection must not count as unhandled, which would end the whole run.
function quiet(promise) {
    promise.catch(() => {});
    return promise;
}

// section NAME FN: an exception (a page that never loads, a browser that died) fails the
// section with its reason instead of ending the whole run.
async function section(name, fn) {
    try {
        await fn();
    } catch (e) {
        check(`${name}: the section ran to its end`, [String(e && e.stack ? e.stack : e)]);
    }
}

// Every navigation and resource entry of every page visited, for the protocol check at the end.
const protocols = [];
async function recordProtocols(page) {
    const entries = await page.evaluate(() =>
        [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')].map(
            (e) => ({ name: e.name, proto: e.nextHopProtocol })));
    protocols.push(...entries);
}

const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    // The servers make a self-signed certificate at start-up. play() without a user gesture is
    // what the media check needs; headless has no audio device to mute, but a desktop run would.
    args: ['--ignore-certificate-errors', '--autoplay-policy=no-user-gesture-required', '--mute-audio'],
});
info(`Chromium ${browser.version()}, playwright-core ${requireCached('playwright-core/package.json').version}`);

// ---- 1. charset: the server's "; charset=..." is all the browser has to go by (no <meta charset>)
await section('charset', async () => {
    const text = file('utf8.txt').toString('utf8');
    const page = await browser.newPage();
    for (const [path, type] of [['utf8.html', 'text/html; charset=utf-8'], ['utf8.txt', 'text/plain; charset=utf-8']]) {
        const resp = await page.goto(url + path);
        const got = await page.evaluate(() => ({
            charset: document.characterSet,
            text: (document.getElementById('t') || document.body).textContent,
        }));
        const p = [];
        if (resp.headers()['content-type'] !== type) p.push(`Content-Type: ${resp.headers()['content-type']}, want ${type}`);
        if (got.charset !== 'UTF-8') p.push(`document.characterSet: ${got.charset}`);
        if (got.text !== text) p.push(`decoded: ${JSON.stringify(got.text)}`, `want:    ${JSON.stringify(text)}`);
        check(`charset: ${path} (non-ASCII, no <meta charset>) decodes as UTF-8 from "${type}"`, p);
        await recordProtocols(page);
    }
    // The option has to reach the browser: the same bytes labelled Latin-1 decode to mojibake,
    // exactly what the browser's decoder for that label (windows-1252, per WHATWG) makes of them.
    // Node's own TextDecoder would not do: it takes the label for ISO-8859-1 proper.
    const resp = await page.goto(urlLatin1 + 'utf8.txt');
    const got = await page.evaluate((bytes) => ({
        charset: document.characterSet, text: document.body.textContent,
        want: new TextDecoder('iso-8859-1').decode(new Uint8Array(bytes)),
    }), [...file('utf8.txt')]);
    const p = [];
    if (resp.headers()['content-type'] !== 'text/plain; charset=iso-8859-1') p.push(`Content-Type: ${resp.headers()['content-type']}`);
    if (got.charset !== 'windows-1252') p.push(`document.characterSet: ${got.charset}`);
    if (got.text !== got.want || got.text === text) p.push(`decoded: ${JSON.stringify(got.text)}`, `want:    ${JSON.stringify(got.want)}`);
    check('charset: with --charset iso-8859-1 the same utf8.txt is decoded as windows-1252', p);
    await recordProtocols(page);
    await page.close();
});

// ---- 2. precompressed siblings: the browser's own Accept-Encoding, then gzip only, then none
await section('precompressed', async () => {
    const etags = {};
    for (const [accept, coding, ext] of [[null, 'br', '.br'], ['gzip', 'gzip', '.gz'], ['identity', undefined, '']]) {
        // The context's extra headers replace the Accept-Encoding Chromium would send.
        const ctx = await browser.newContext(accept ? { extraHTTPHeaders: { 'accept-encoding': accept } } : {});
        const page = await ctx.newPage();
        const seen = [];
        page.on('response', (r) => {
            const name = new URL(r.url()).pathname.slice(1);
            if (name === 'app.js' || name === 'style.css')
                seen.push(quiet((async () => ({
                    name, status: r.status(), headers: await r.allHeaders(),
                    sent: (await r.request().allHeaders())['accept-encoding'], body: await r.body(),
                }))()));
        });
        await page.goto(url + 'precompressed.html');
        const got = await within(15000, page.evaluate(() => ({
            loaded: window.appLoaded, text: window.appText,
            color: getComputedStyle(document.getElementById('box')).color,
            sizes: Object.fromEntries(performance.getEntriesByType('resource').map(
                (e) => [new URL(e.name).pathname.slice(1), e.encodedBodySize])),
        })), 'the page\'s state');
        const responses = await within(15000, Promise.all(seen), 'the responses\' bodies');
        await recordProtocols(page);
        await ctx.close();

        const p = [];
        const label = accept ? `Accept-Encoding: ${accept}` : 'Chromium\'s own Accept-Encoding';
        if (got.loaded !== true) p.push('app.js did not run (window.appLoaded unset)');
        if (got.text !== file('utf8.txt').toString('utf8')) p.push(`app.js's string literal: ${JSON.stringify(got.text)}`);
        if (got.color !== 'rgb(1, 2, 3)') p.push(`style.css not applied: #box color ${got.color}`);
        for (const name of ['app.js', 'style.css']) {
            const r = responses.find((x) => x.name === name);
            if (!r) { p.push(`${name}: no response seen`); continue; }
            const where = `${name} (sent ${r.sent})`;
            if (r.status !== 200) p.push(`${where}: status ${r.status}`);
            if (r.headers['content-encoding'] !== coding) p.push(`${where}: Content-Encoding ${r.headers['content-encoding']}, want ${coding}`);
            if (!/(^|,\s*)accept-encoding\s*(,|$)/i.test(r.headers.vary || '')) p.push(`${where}: Vary ${r.headers.vary}`);
            if (sha256(r.body) !== sha256(file(name))) p.push(`${where}: decoded body (${r.body.length} bytes) differs from the file`);
            // What crossed the wire is the sibling's bytes, not the file compressed on the fly.
            const wire = sizeOf(name + ext);
            if (got.sizes[name] !== wire) p.push(`${where}: ${got.sizes[name]} bytes on the wire, ${name + ext} has ${wire ?? 'no file'}`);
            const etag = r.headers.etag || '';
            const suffix = { br: '-br"', gzip: '-gz"' }[coding];
            if (suffix ? !etag.endsWith(suffix) : /-(br|gz)"$/.test(etag)) p.push(`${where}: ETag ${etag}`);
            (etags[name] ||= []).push(etag);
        }
        check(`precompressed: ${label}: app.js and style.css arrive ${coding || 'uncompressed'}, decoded to the files' bytes; the script runs, the style applies`, p);
    }
    const p = [];
    for (const [name, list] of Object.entries(etags))
        if (new Set(list).size !== 3) p.push(`${name}: ${list.join(' ')}`);
    check('precompressed: each encoding has its own ETag (br, gzip, identity)', p);
});

// ---- 3. media: an <audio> element's Range requests: the first, abandoned once the metadata is in
// (preload=metadata), then a seek to the last second, played to the end
await section('media', async () => {
    const size = sizeOf('tone.wav');
    const page = await browser.newPage();
    const seen = [];
    const failed = [];
    page.on('response', (r) => {
        if (r.url().endsWith('/tone.wav'))
            seen.push(quiet((async () => ({
                range: (await r.request().allHeaders()).range, status: r.status(), headers: await r.allHeaders(),
            }))()));
    });
    page.on('requestfailed', (r) => {
        if (r.url().endsWith('/tone.wav')) failed.push(r);
    });
    await page.goto(url + 'media.html');
    const meta = await within(20000, page.evaluate(async () => {
        const a = document.getElementById('a');
        if (a.readyState < 1)
            await new Promise((resolve, reject) => {
                a.onloadedmetadata = resolve;
                a.onerror = () => reject(new Error(`media error ${a.error && a.error.code}: ${a.error && a.error.message}`));
            });
        return { readyState: a.readyState, duration: a.duration };
    }), 'loadedmetadata');
    check(`media: the <audio> element reads the WAV's metadata (readyState ${meta.readyState}), duration ${meta.duration} s (${wavSeconds} s ± 0.1)`,
        meta.readyState >= 1 && Math.abs(meta.duration - wavSeconds) <= 0.1 ? [] : [JSON.stringify(meta)]);
    const before = seen.length;
    const seek = await within(20000, page.evaluate(async () => {
        const a = document.getElementById('a');
        const seeked = new Promise((resolve) => { a.onseeked = resolve; });
        a.currentTime = a.duration - 1;
        await seeked;
        return { currentTime: a.currentTime, readyState: a.readyState };
    }), 'seeked');
    // The last second played through: the bytes up to the end came, and decoded.
    const ended = await within(20000, page.evaluate(async () => {
        const a = document.getElementById('a');
        const end = new Promise((resolve) => { a.onended = resolve; });
        await a.play();
        await end;
        return { currentTime: a.currentTime, ended: a.ended };
    }), 'ended');
    await recordProtocols(page);
    const responses = await within(15000, Promise.all(seen), 'the range responses');
    await page.close();

    // Every response answers exactly the range asked for.
    const p = [];
    for (const r of responses) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(r.range || '');
        if (!m) { p.push(`a request without a single range: ${r.range}`); continue; }
        const first = Number(m[1]);
        const last = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
        const want = `bytes ${first}-${last}/${size}`;
        if (r.status !== 206 || r.headers['content-range'] !== want || Number(r.headers['content-length']) !== last - first + 1)
            p.push(`${r.range}: ${r.status}, Content-Range ${r.headers['content-range']}, Content-Length ${r.headers['content-length']}; want 206, ${want}`);
    }
    if (responses.length < 2) p.push(`only ${responses.length} range response(s)`);
    if (responses.length && responses[0].range !== 'bytes=0-') p.push(`the first request asked for ${responses[0].range}`);
    check(`media: ${responses.length} Range requests, each answered 206 with its own Content-Range (${responses.map((r) => r.range).join(', ')})`, p);

    // The seek lands in the last second: the browser must ask for a new range near the end.
    const late = responses.slice(before).filter((r) => Number((/^bytes=(\d+)/.exec(r.range || '') || [])[1]) >= size * 0.95);
    check(`media: seeking to duration - 1 (currentTime ${seek.currentTime}) asks for a new range in the last 5% of the file (${late.map((r) => r.range).join(', ') || 'none'})`,
        late.length >= 1 && late.every((r) => r.status === 206) ? [] : [`responses after the seek: ${responses.slice(before).map((r) => `${r.range} ${r.status}`).join(', ') || 'none'}`]);
    check(`media: the last second plays to 'ended' (currentTime ${ended.currentTime})`,
        ended.ended && Math.abs(ended.currentTime - wavSeconds) <= 0.1 ? [] : [JSON.stringify(ended)]);
    for (const r of failed)
        info(`media: the browser abandoned ${r.headers().range}: ${r.failure() && r.failure().errorText}`);
});

// ---- 4. a large download through the page's fetch(), hashed by the browser
await section('download', async () => {
    const page = await browser.newPage();
    await page.goto(url + 'index.html');
    const started = Date.now();
    const got = await within(60000, page.evaluate(async () => {
        const r = await fetch('big.bin', { cache: 'no-store' });
        const buf = await r.arrayBuffer();
        const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
        return { status: r.status, length: buf.byteLength, sha: [...digest].map((b) => b.toString(16).padStart(2, '0')).join('') };
    }), 'fetch(big.bin)');
    const seconds = (Date.now() - started) / 1000;
    await recordProtocols(page);
    await page.close();
    const size = sizeOf('big.bin');
    check(`download: fetch() of ${size} bytes, SHA-256 by crypto.subtle equals sha256sum's (${(size / 1048576 / seconds).toFixed(0)} MiB/s)`,
        got.status === 200 && got.length === size && got.sha === bigSha ? [] :
            [`status ${got.status}, ${got.length} bytes, ${got.sha}`, `want 200, ${size} bytes, ${bigSha}`]);
});

// ---- 5. the protocol the browser used for every page and resource above
{
    const wrong = protocols.filter((e) => e.proto !== expectProto);
    const kinds = [...new Set(protocols.map((e) => e.proto))].join(', ');
    check(`protocol: all ${protocols.length} navigations and resources came over ${expectProto} (EXPECT_PROTO; seen: ${kinds || 'none'})`,
        protocols.length >= 8 && wrong.length === 0 ? [] :
            [`${protocols.length} entries`, ...wrong.map((e) => `${e.name}: '${e.proto}'`)]);
}

await browser.close();
info('browser.mjs: done');
