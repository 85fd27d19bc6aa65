//! Page-numbered listings (`?page=N&per_page=M`, `result_info {page, per_page, total_pages,
//! total_count}`): service tokens, account API tokens and client certificates. The listing is
//! followed to its end and distrusted when it moves under the reader.

use super::PageToken;
use crate::cloudflare::ResultInfo;

/// The page a token asks for: the first without one. A cursor is never handed out for a
/// page-numbered listing; start over rather than guess.
pub fn page_number(token: Option<&PageToken>) -> u32 {
    match token {
        Some(PageToken::Page(n)) => *n,
        Some(PageToken::Cursor(_)) | None => 1,
    }
}

/// Where the listing goes on after page `asked`, which held `items` objects: nowhere once a
/// page is empty or `page >= total_pages`; else the next page. A page that answers another
/// page number, or a page before the last that holds fewer objects than its size, means the
/// listing moved under the reader: an error, so that nothing is decided on it.
pub fn next_page(
    info: Option<&ResultInfo>,
    asked: u32,
    items: usize,
    per_page: u32,
) -> Result<Option<PageToken>, String> {
    if items == 0 {
        return Ok(None);
    }
    let Some(info) = info else {
        // No page counts at all: go on until a page comes back empty.
        return Ok(asked.checked_add(1).map(PageToken::Page));
    };
    // Each count below decides where the listing ends or whether it is trusted: unreadable,
    // it makes the page untrusted rather than pass the check.
    let unreadable = |e: String| format!("page {asked}: {e}");
    if let Some(page) = info.page.trusted("page").map_err(unreadable)? {
        if page != u64::from(asked) {
            return Err(format!("page {asked} was answered as page {page}"));
        }
    }
    let size = info
        .per_page
        .trusted("per_page")
        .map_err(unreadable)?
        .unwrap_or(u64::from(per_page));
    if items as u64 > size.max(u64::from(per_page)) {
        return Err(format!(
            "page {asked} holds {items} objects, more than its size {size}"
        ));
    }
    match info
        .total_pages
        .trusted("total_pages")
        .map_err(unreadable)?
    {
        Some(total) if u64::from(asked) >= total => Ok(None),
        Some(total) if (items as u64) < size => Err(format!(
            "page {asked} of {total} holds {items} objects, fewer than its size {size}"
        )),
        _ => Ok(asked.checked_add(1).map(PageToken::Page)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(page: Option<u64>, per_page: Option<u64>, total_pages: Option<u64>) -> ResultInfo {
        ResultInfo {
            page: page.into(),
            per_page: per_page.into(),
            total_pages: total_pages.into(),
            ..ResultInfo::default()
        }
    }

    #[test]
    fn the_listing_ends_on_an_empty_page_or_the_last_page_and_distrusts_short_ones() {
        let next = PageToken::Page;
        // (info, page asked, items, expected; Err: the listing is not trusted)
        type Case = (
            Option<ResultInfo>,
            u32,
            usize,
            Result<Option<PageToken>, ()>,
        );
        let cases: Vec<Case> = vec![
            (
                Some(info(Some(1), Some(50), Some(3))),
                1,
                50,
                Ok(Some(next(2))),
            ),
            (Some(info(Some(3), Some(50), Some(3))), 3, 7, Ok(None)),
            (Some(info(Some(1), Some(50), Some(1))), 1, 7, Ok(None)),
            (Some(info(Some(2), Some(50), Some(3))), 2, 0, Ok(None)),
            // No total: go on until a page is empty.
            (Some(info(Some(1), Some(50), None)), 1, 7, Ok(Some(next(2)))),
            (None, 4, 3, Ok(Some(next(5)))),
            (None, 4, 0, Ok(None)),
            // A short page before the last: tokens moved while the listing was read.
            (Some(info(Some(1), Some(50), Some(3))), 1, 49, Err(())),
            // Another page than the one asked for.
            (Some(info(Some(1), Some(50), Some(3))), 2, 50, Err(())),
            // More than a page holds.
            (Some(info(Some(1), Some(50), Some(3))), 1, 51, Err(())),
        ];
        for (info, asked, items, expected) in cases {
            let got = next_page(info.as_ref(), asked, items, 50).map_err(|_| ());
            assert_eq!(got, expected, "{info:?} page {asked} with {items}");
        }
        assert_eq!(next_page(None, u32::MAX, 1, 50), Ok(None));
    }
}
